"""`sim alert fire/resolve` in the console: a realistic notification through the intake's unit of work."""

from __future__ import annotations

from tests.test_console import RunScript, console_settings, run_script

__all__ = ["console_settings", "run_script"]


def test_sim_alert_fires_a_thread_and_resolves_it(run_script: RunScript) -> None:
    """Firing posts a root and a thread line in staging's incident channel; resolving updates the root."""
    code, output = run_script(["sim alert fire HighErrorRate --severity critical --env production",
                               "sim alert resolve HighErrorRate"])
    assert code == 0, output
    fired, resolved = output.split("sim alert resolve HighErrorRate", 1)
    assert "CRITICAL · FIRING: HighErrorRate" in fired and "1 firing" in fired and "C0PRODINC1" in fired
    assert "RESOLVED" in resolved and "All resolved" in resolved


def test_sim_alert_refuses_bad_lines(run_script: RunScript) -> None:
    """Resolving an alert that is not firing, or an unknown option, fails the script with the usage."""
    code, output = run_script(["sim alert resolve Nothing"])
    assert code == 1 and "is not firing" in output
    code, output = run_script(["sim alert fire X --colour red"])
    assert code == 1 and "usage: sim alert fire NAME" in output


def test_the_roots_buttons_work_in_the_console(run_script: RunScript) -> None:
    """A critical alert's root in the console: Acknowledge, the Silence for… menu (a simulated Alertmanager where
    none is configured, said in the banner), Unsilence, then the resolve removes the buttons."""
    code, output = run_script(["as erin", "sim alert fire TradingBotDown --severity critical --env production",
                               "click Acknowledge", "click Silence for 2 h", "click Unsilence",
                               "sim alert resolve TradingBotDown"])
    assert code == 0, output
    assert "simulated (no Alertmanager configured)" in output
    assert "[ Silence for… ▾ 15 min · 30 min · 1 h" in output
    assert "Acknowledged by @erin" in output and "You acknowledged *TradingBotDown*." in output
    assert "Silenced in Alertmanager by @erin for 2 h" in output and "Silenced *TradingBotDown* until" in output
    assert "Unsilenced by @erin" in output and "All resolved" in output
