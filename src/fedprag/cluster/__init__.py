"""Running fedprag on machines: the query path's fan-out to the sites (``fanout``), launchers for a
federation (a SuperLink and SuperNodes on loopback, or Flower's Ray simulation) and the main job's
federation (``demo``)."""
