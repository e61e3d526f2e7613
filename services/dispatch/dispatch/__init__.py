"""dispatch: villages, grids and staff; the admin's queue; assignment, deadlines, escalation."""
