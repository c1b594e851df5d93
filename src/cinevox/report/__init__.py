"""Figures (the paper's Figs. 2-5 and more) and the HTML report."""
