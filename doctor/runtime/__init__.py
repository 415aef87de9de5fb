"""Code that runs inside the target interpreter, with torch (the runner, selftest, benchmarks).

Never imported by the doctor's own process: the CLI launches it in the target through a subprocess.
"""
