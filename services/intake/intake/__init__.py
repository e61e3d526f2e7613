"""intake: the gateway the mini-program calls (accounts, reports, photos, ratings, Open311)."""
