"""What users hand over, decoded and bounded before any model sees it (a layer below ``tomviz.models``):
``image`` (files, bytes, arrays → RGB pictures → pixel values)."""
