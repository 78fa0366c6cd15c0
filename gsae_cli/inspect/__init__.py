"""`gsae inspect`: feature dashboards, the static browser, comparing two SAEs and the blinded
rating study.
"""
