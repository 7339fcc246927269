"""Reward modelling on annotator rankings with ties."""
