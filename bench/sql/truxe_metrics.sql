-- truxe.metrics() as a monitoring login would scrape it (bench/run: 1 client)
SELECT count(*) FROM truxe.metrics();
