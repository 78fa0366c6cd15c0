"""`gsae eval`: the eval set (held-out windows and their clean passes), the spliced passes and the
metrics.
"""
