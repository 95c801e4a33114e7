"""One router per resource: `jobs` (/v1/jobs), `events` (/v1/events), `health` (/healthz, /readyz, /metrics) and
`heygem` (/easy/submit, /easy/query: HeyGem's API)."""
