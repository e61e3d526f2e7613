"""scoring: the points ledger, scoring rules, leaderboards (积分排行), KPI rates, assessment."""
