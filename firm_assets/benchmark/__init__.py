"""FIRM-Bench: human-labelled items that measure how closely a critic's scores follow people's."""
