"""The app's pages: one Streamlit script per page, each a thin render(context) function."""
