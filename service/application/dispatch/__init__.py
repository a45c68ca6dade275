"""Feeds each printer one job at a time, and records what the printer reports.

One decision per module:

- `waiting`: which job of a lane prints next, whether it resumes a print cut short, and when
  a waiting job expires;
- `workers`: a printer's loop (wait until it is ready, take the next job), and when every
  printer of a lane is away, failing its jobs rather than holding them forever;
- `progress`: one job through its printer, each step a fenced transition of the store;
- `takeover`: what the store says this replica must print (after a restart, a takeover, a
  lost write, a change by another replica);
- `supervisor`: the `PrintDispatcher` that owns the tasks and the public API;
- `spawner`: starting background tasks only while the dispatcher runs.
"""

from service.application.dispatch.supervisor import PrintDispatcher

__all__ = ["PrintDispatcher"]
