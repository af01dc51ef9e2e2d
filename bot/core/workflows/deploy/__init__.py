"""The deploy workflow: plan, approvals, strategies (rolling / canary / blue-green) and their rollback."""
