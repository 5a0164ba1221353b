WITH B AS (SELECT bidder, PROCTIME() AS p_time FROM bid)
SELECT bidder, count(*) AS bid_count, window_start, window_end
FROM TUMBLE(B, p_time, INTERVAL '10' SECOND)
GROUP BY bidder, window_start, window_end
