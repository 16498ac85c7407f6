"""The main job, ``python -m klflow check``: proves the global loss correct on any rank count."""
