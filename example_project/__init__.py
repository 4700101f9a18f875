"""River water-quality monitoring: an orcapod pipeline served as a Dagster code location.

Field teams sample six river stations every two weeks. The pipeline calibrates the oxygen
probe readings, derives oxygen saturation (temperature- and altitude-corrected), scores each
sample with a water-quality index and summarises the network per survey.
"""
