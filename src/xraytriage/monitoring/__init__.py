"""``xraytriage monitor``: deployed scores against the bundle's validation reference, per time window
and group, with alerts that a fresh draw from the validation population does not raise."""
