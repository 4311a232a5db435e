"""Pictures (PIL) and figures (plotly) of traces. Never imports gradio."""
from tomviz.render.figures import cluster_map_figure, gflops_figure, group_attention_figure, token_count_figure
from tomviz.render.groups import cluster_map_picture, cluster_picture, layer_strip_picture
from tomviz.render.overlay import group_overlay, heatmap_overlay, small_multiples
from tomviz.render.text import group_table, token_highlights

__all__ = ["cluster_map_figure", "cluster_map_picture", "cluster_picture", "gflops_figure", "group_attention_figure",
           "group_overlay", "group_table", "heatmap_overlay", "layer_strip_picture", "small_multiples",
           "token_count_figure", "token_highlights"]
