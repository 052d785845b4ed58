"""The Matryoshka maths: nesting lists, heads and nested losses."""
