"""Journeys across several stages: `kit demo` (import → train → predict → ensemble → submit → score).

The layer above the stages: stages never import each other (an import contract), so whatever chains
them lives here.
"""
