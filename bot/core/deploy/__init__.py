"""The deployment workflow: plan, approvals, locks, the durable step engine and its strategies."""
