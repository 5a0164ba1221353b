SELECT Q.seller, Q.id, avg(Q.final) OVER (
    PARTITION BY Q.seller ORDER BY Q.expires, Q.id ROWS BETWEEN 9 PRECEDING AND CURRENT ROW
  ) AS avg_final
FROM (
  SELECT A.id, A.seller, A.expires, max(B.price) AS final
  FROM auction AS A JOIN bid AS B ON A.id = B.auction
  WHERE B.date_time BETWEEN A.date_time AND A.expires
  GROUP BY A.id, A.seller, A.expires
) AS Q
