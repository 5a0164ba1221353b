SELECT auction, bidder, price, date_time, DATE_FORMAT(date_time, 'yyyy-MM-dd') AS date, DATE_FORMAT(date_time, 'HH:mm') AS time
FROM bid
