SELECT status FROM ref.verify_magic_link('garbage-not-a-token');
