SELECT allowed FROM truxe.rate_limit_hit('hot', 1000000000, '1 minute');
