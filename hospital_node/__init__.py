"""hospital_node package."""
