"""collectord: a metrics collector daemon speaking StatsD, DogStatsD and InfluxDB line protocol."""

__version__ = "0.1.0"
