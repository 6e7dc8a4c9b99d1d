"""Samplers: one algorithm per file, plain functions sharing one signature

    sampler(denoiser, schedule, x_T, *, steps, spacing, generator=None, on_step=None, **settings) -> x0

walking explicit (t, t_next) pairs of `schedule.timesteps(steps, spacing)`, which ends at -1 (clean data).
"""
