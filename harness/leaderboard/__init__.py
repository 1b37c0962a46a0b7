"""The leaderboard stage: tables, plots and provenance from the eval results."""
