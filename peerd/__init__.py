"""peerd: the daemon, its services (LMTP, IMAP, POP3, sync, control API) and peerctl."""
