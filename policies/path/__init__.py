"""The request path's rules: what happens to one request between arriving and being answered.

- access: which claims (a class, a pin, a deadline, a service tier) a credential may make
- lane_choice: which lane one request goes to (pins, deadlines, weights), and where it fails over
- admission: a lane's gate (slots, priority queue with aging) and where a request may wait
- upstream_pool: a lane's replicas, least-in-flight choice and passive outlier ejection
- retry_budget: how many retries the router may have in flight at once
- flush, batching, provider_batching: when a micro-batch or a provider batch file is sent, and the
  bounded queue it waits in

The path reads the control side's snapshot and weights (policies.control); it never imports a policy
(policies.builtin). What must not live here: decisions taken per tick (policies.control).
"""
