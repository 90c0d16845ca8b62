"""Journeys across several stages: `kit demo` (import → train → predict → ensemble → submit → score) and
`kit tune` (a search study whose trials train and predict).

The layer above the stages: stages never import each other (an import contract), so whatever chains
them lives here.
"""
