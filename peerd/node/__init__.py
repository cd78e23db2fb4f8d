"""What every service is given: the config, the node (store, fence, logins, counters), errors on the wire, TLS."""
