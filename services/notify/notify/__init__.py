"""notify: the inbox, message templates and delivery channels of Service365."""
