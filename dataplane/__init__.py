"""The data plane: netlink adapter, NSM-style VxLAN links, make-before-break switching, the lab.

Nothing here knows Celery or FastAPI; ``workers`` wraps these functions in tasks that run on
the node that owns the links.
"""
