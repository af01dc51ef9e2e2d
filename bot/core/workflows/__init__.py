"""Workflows on the runs engine (`bot.core.runs`): deploy, and the safety controls."""
