"""One entry module per stage (`python -m pipeline <stage>`); a stage never imports another stage."""
