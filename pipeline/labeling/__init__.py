"""Labels: gold, the cue lexicon, the Label Studio round trip, the labelled set and its splits."""
