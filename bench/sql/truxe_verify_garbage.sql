SELECT status FROM truxe.verify_magic_link('garbage-not-a-token');
