"""Development-time tooling: the native launcher, process control, config generators.

Never imported by the services themselves.
"""
