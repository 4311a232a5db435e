"""Scores over merged tokens: attention through merges, Banzhaf values and interactions, image×text (HBI)."""
from tomviz.scores.banzhaf import BanzhafResult, banzhaf
from tomviz.scores.estimate import GameEstimate, banzhaf_game
from tomviz.scores.game import model_game

__all__ = ["BanzhafResult", "GameEstimate", "banzhaf", "banzhaf_game", "model_game"]
