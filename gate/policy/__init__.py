"""Policies: rules over scan metrics, evaluated into an approve / warn / block decision."""
