"""feed: township news (魅力沙口集) and the party-building feed (党建朋友圈)."""
