"""Build-time tools for callsctl: documentation generators and the dist builder.

They live outside the `callsctl` package on purpose: nothing here is needed at
run time, so the installed CLI stays small and imports stay fast.
"""
