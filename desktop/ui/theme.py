"""Light and dark, following the system: Fusion with a palette chosen from the system colour scheme."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication

from desktop import resources


def _dark_palette() -> QPalette:
    p = QPalette()
    colors = {
        QPalette.ColorRole.Window: "#1f2227",
        QPalette.ColorRole.WindowText: "#e6e8eb",
        QPalette.ColorRole.Base: "#272b31",
        QPalette.ColorRole.AlternateBase: "#2d3238",
        QPalette.ColorRole.Text: "#e6e8eb",
        QPalette.ColorRole.Button: "#2d3238",
        QPalette.ColorRole.ButtonText: "#e6e8eb",
        QPalette.ColorRole.Highlight: "#3b82f6",
        QPalette.ColorRole.HighlightedText: "#ffffff",
        QPalette.ColorRole.ToolTipBase: "#272b31",
        QPalette.ColorRole.ToolTipText: "#e6e8eb",
        QPalette.ColorRole.PlaceholderText: "#9aa3ad",
        QPalette.ColorRole.Midlight: "#3a4048",
        QPalette.ColorRole.Mid: "#4a515a",
        QPalette.ColorRole.Link: "#60a5fa",
    }
    for role, color in colors.items():
        p.setColor(role, QColor(color))
    p.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text, QColor("#6b737c"))
    p.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText, QColor("#6b737c"))
    return p


def _light_palette() -> QPalette:
    p = QApplication.style().standardPalette()
    p.setColor(QPalette.ColorRole.Window, QColor("#f3f4f6"))
    p.setColor(QPalette.ColorRole.Base, QColor("#ffffff"))
    p.setColor(QPalette.ColorRole.AlternateBase, QColor("#f7f8fa"))
    p.setColor(QPalette.ColorRole.Highlight, QColor("#2563eb"))
    p.setColor(QPalette.ColorRole.PlaceholderText, QColor("#6b7280"))
    p.setColor(QPalette.ColorRole.Midlight, QColor("#e2e5e9"))
    return p


def apply_theme(app: QApplication, scheme: Qt.ColorScheme | None = None) -> None:
    """Style the app for ``scheme`` (the system's current one when None; Unknown counts as light)."""
    if scheme is None:
        scheme = QGuiApplication.styleHints().colorScheme()
    app.setStyle("Fusion")
    app.setPalette(_dark_palette() if scheme == Qt.ColorScheme.Dark else _light_palette())
    app.setStyleSheet(resources.read_text("style.qss"))


def follow_system(app: QApplication) -> None:
    """Apply the theme now and again whenever the system switches between light and dark."""
    apply_theme(app)
    QGuiApplication.styleHints().colorSchemeChanged.connect(lambda scheme: apply_theme(app, scheme))
