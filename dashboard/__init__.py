"""A live dashboard of the swarm: which nodes serve which blocks, their stake, what they served
and committed, the verifiers and the slashes, readable by someone who has never seen it.

- `dashboard.snapshot`: the page's values (frozen dataclasses) and the pure functions that
  build them from one round of reads;
- `dashboard.collector`: the reads (chain, DHT, status APIs) -> snapshot;
- `dashboard.web`: `dashboard_router(collector, extra=...)`, a FastAPI `APIRouter` serving the
  page, `/api/swarm` and the page's static files (shipped in `dashboard/static/`, no CDN);
- `dashboard.service`: the standalone dashboard (`stakeswarm dashboard`), built and stopped whole.

docs/dashboard.md describes the page.
"""
