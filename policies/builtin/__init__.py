"""The built-in policies, each a pure function of the snapshot to a proposal (policies.control.protocol).

- load, cost, latency, adaptive: the seed's rules, by arrival rate, cost per request, latency, and a score
- slo: the cheapest mode predicted to keep the classes' objectives (M/G/c, policies.queueing)
- fleet: the split and the autoscaled lanes' replicas decided together
- static: always one mode; composite: the first opinion of several, vetoed by guards

Found by name through policies.registry. What must not live here: anything a policy does not decide
(measurement, the controller, the request path).
"""
