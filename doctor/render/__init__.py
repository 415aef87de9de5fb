"""Renderers turn results into text; they never compute or decide anything."""
