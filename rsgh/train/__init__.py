"""Training: the step (eager and compiled), the lock-step loop, the run folder, a task end to end."""
