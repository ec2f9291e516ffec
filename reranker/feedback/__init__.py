"""Behaviour: the UBI schema, judgments from clicks, and a click simulator."""
