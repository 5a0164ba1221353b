SELECT auction, bidder, price, date_time, to_char(date_time, '%Y-%m-%d') AS date, to_char(date_time, '%H:%M') AS time
FROM bid
